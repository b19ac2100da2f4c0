//! The settings every layer takes: the clock, the client-address resolver and the
//! denial renderer, in one place.
//!
//! Each layer has setters for them (`clock`, `client_addr_resolver`, `renderer`),
//! remembers which it was given ([`Explicit`]), and takes the rest from the stack
//! with `inherit(&LayerSettings)`: the facade (`NhiGuard::builder`) fills only what
//! a layer left unset, so a renderer or clock given to one layer stays with it.
//!
//! ```
//! use std::sync::Arc;
//! use nhi_guard_core::clock::{Clock, ManualClock, SharedClock};
//! use nhi_guard_core::settings::{Explicit, LayerSettings};
//! use nhi_guard_core::ClientAddrResolver;
//!
//! let stack = LayerSettings::new().clock(Arc::new(ManualClock::at(std::time::UNIX_EPOCH)));
//! // A layer that set its own resolver but no clock.
//! let mut explicit = Explicit::default();
//! explicit.resolver = true;
//! let (mut clock, mut resolver): (SharedClock, _) = (Arc::new(nhi_guard_core::SystemClock), ClientAddrResolver::new());
//! explicit.fill(&stack, &mut clock, &mut resolver, None);
//! assert_eq!(clock.now(), std::time::UNIX_EPOCH);
//! ```

use std::sync::Arc;

use crate::address::ClientAddrResolver;
use crate::clock::SharedClock;
use crate::denial::{DefaultRenderer, SharedRenderer};

/// Settings a stack gives the layers that did not set their own. Each is `None`
/// until set: a layer keeps its own default for what the stack leaves unset too.
#[derive(Clone, Default)]
#[must_use]
pub struct LayerSettings {
    clock: Option<SharedClock>,
    resolver: Option<ClientAddrResolver>,
    renderer: Option<SharedRenderer>,
}

impl std::fmt::Debug for LayerSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerSettings")
            .field("clock", &self.clock)
            .field("resolver", &self.resolver)
            .field("renderer", &self.renderer.is_some())
            .finish()
    }
}

impl LayerSettings {
    /// Nothing set.
    pub fn new() -> Self {
        Self::default()
    }

    /// The clock of every layer that has none of its own.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The client-address resolver (trusted proxies) of every layer.
    pub fn client_addr_resolver(mut self, resolver: ClientAddrResolver) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// The denial renderer of every layer that has none of its own.
    pub fn renderer(mut self, renderer: SharedRenderer) -> Self {
        self.renderer = Some(renderer);
        self
    }

    /// The default renderer with this `realm` in its challenges.
    pub fn realm(self, realm: impl Into<Arc<str>>) -> Self {
        self.renderer(DefaultRenderer::new().realm(realm).shared())
    }

    /// The renderer, when set.
    pub fn denial_renderer(&self) -> Option<&SharedRenderer> {
        self.renderer.as_ref()
    }
}

/// Which of the common settings a layer was given explicitly; the others it takes
/// from the stack ([`Explicit::fill`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[allow(clippy::struct_excessive_bools)]
pub struct Explicit {
    /// The clock was set on the layer.
    pub clock: bool,
    /// The client-address resolver was set on the layer.
    pub resolver: bool,
    /// The renderer (or realm) was set on the layer.
    pub renderer: bool,
}

impl Explicit {
    /// Fills each setting the layer did not set with the stack's, where the stack
    /// has one. `renderer` is `None` for a layer that renders no denial (audit).
    pub fn fill(
        &self,
        stack: &LayerSettings,
        clock: &mut SharedClock,
        resolver: &mut ClientAddrResolver,
        renderer: Option<&mut SharedRenderer>,
    ) {
        if let Some(c) = stack.clock.as_ref().filter(|_| !self.clock) {
            *clock = c.clone();
        }
        if let Some(r) = stack.resolver.as_ref().filter(|_| !self.resolver) {
            *resolver = r.clone();
        }
        if let (Some(mine), Some(r)) = (renderer, stack.renderer.as_ref().filter(|_| !self.renderer)) {
            *mine = r.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn fills_only_what_the_layer_left_unset() {
        let t = UNIX_EPOCH + Duration::from_secs(1_900_000_000);
        let proxies = ClientAddrResolver::new().trust_proxies(["10.0.0.0/8".parse().expect("net")]);
        let stack = LayerSettings::new()
            .clock(Arc::new(ManualClock::at(t)))
            .client_addr_resolver(proxies.clone())
            .realm("stack");
        let mine = DefaultRenderer::new().realm("mine").shared();

        let mut clock: SharedClock = Arc::new(ManualClock::at(UNIX_EPOCH));
        let mut resolver = ClientAddrResolver::new();
        let mut renderer = mine.clone();
        let explicit = Explicit {
            clock: true,
            resolver: false,
            renderer: true,
        };
        explicit.fill(&stack, &mut clock, &mut resolver, Some(&mut renderer));
        assert_eq!(clock.now(), UNIX_EPOCH, "the layer's own clock stays");
        assert_eq!(resolver, proxies, "the stack's resolver fills the unset one");
        assert!(Arc::ptr_eq(&renderer, &mine), "the layer's own renderer stays");

        Explicit::default().fill(&stack, &mut clock, &mut resolver, Some(&mut renderer));
        assert_eq!(clock.now(), t);
        assert!(!Arc::ptr_eq(&renderer, &mine));

        // A stack that sets nothing changes nothing.
        let before = clock.clone();
        Explicit::default().fill(&LayerSettings::new(), &mut clock, &mut resolver, None);
        assert!(Arc::ptr_eq(&before, &clock));
    }
}
