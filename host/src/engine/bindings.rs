//! The only generated code in the host: wasmtime bindings for the `wit/` world.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "plugin",
    imports: { default: async | trappable },
    exports: { default: async },
});
