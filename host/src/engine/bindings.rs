//! The only generated code in the host: wasmtime bindings for both versions
//! of the `wit/` contract. `v2` (0.2.0, timers) reuses `v1`'s modules for
//! the interfaces it imports unchanged at 0.1.0, so those host calls are
//! implemented and linked once for plugins of either version.

/// `switchboard:plugin@0.1.0`: plugins built before timers.
pub mod v1 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "switchboard:plugin/plugin@0.1.0",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

/// `switchboard:plugin@0.2.0`: the current contract.
pub mod v2 {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "switchboard:plugin/plugin@0.2.0",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "switchboard:plugin/sms@0.1.0": super::v1::switchboard::plugin0_1_0::sms,
            "switchboard:plugin/http@0.1.0": super::v1::switchboard::plugin0_1_0::http,
            "switchboard:plugin/kv@0.1.0": super::v1::switchboard::plugin0_1_0::kv,
            "switchboard:plugin/config@0.1.0": super::v1::switchboard::plugin0_1_0::config,
            "switchboard:plugin/log@0.1.0": super::v1::switchboard::plugin0_1_0::log,
        },
    });
}

pub use v1::switchboard::plugin0_1_0::{config, http, kv, log, sms};
pub use v2::switchboard::plugin0_2_0::{timers, types};
