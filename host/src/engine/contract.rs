//! The plugin contract's versions: which one a component targets (read from
//! the `handle-event` export it type-checks against), its pre-instantiated
//! form, and calling `handle-event` with an event in that version's types.

use wasmtime::Store;
use wasmtime::component::{HasSelf, InstancePre, Linker};

use crate::domain::{Direction, Event, EventKind};
use crate::engine::bindings::{v1, v2};
use crate::engine::capabilities::PluginCtx;

/// A version of `switchboard:plugin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Contract {
    /// `switchboard:plugin@0.1.0`: SMS events only.
    #[serde(rename = "0.1.0")]
    V0_1,
    /// `switchboard:plugin@0.2.0`: adds timers.
    #[serde(rename = "0.2.0")]
    V0_2,
}

impl Contract {
    /// What `plugin new`, the SDKs and the examples target.
    pub const CURRENT: Contract = Contract::V0_2;

    /// The package version, `0.2.0`.
    pub fn as_str(self) -> &'static str {
        match self {
            Contract::V0_1 => "0.1.0",
            Contract::V0_2 => "0.2.0",
        }
    }

    /// Whether plugins of this version can use timers and schedules.
    pub fn has_timers(self) -> bool {
        self == Contract::V0_2
    }
}

impl std::fmt::Display for Contract {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "switchboard:plugin@{}", self.as_str())
    }
}

/// Links every host import of every contract version: the interfaces 0.2.0
/// imports at 0.1.0 once, plus 0.2.0's own.
pub fn add_to_linker(linker: &mut Linker<PluginCtx>) -> wasmtime::Result<()> {
    v1::Plugin::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(linker, |ctx| ctx)?;
    v2::switchboard::plugin0_2_0::types::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(linker, |ctx| ctx)?;
    v2::switchboard::plugin0_2_0::timers::add_to_linker::<PluginCtx, HasSelf<PluginCtx>>(linker, |ctx| ctx)
}

/// A component pre-instantiated against the linker, in its contract version.
#[derive(Clone)]
pub enum PluginPre {
    /// Built against 0.1.0.
    V1(v1::PluginPre<PluginCtx>),
    /// Built against 0.2.0.
    V2(v2::PluginPre<PluginCtx>),
}

impl PluginPre {
    /// Reads which contract the component's `handle-event` export follows.
    /// A component that follows neither is refused with the current
    /// version's reason.
    pub fn new(pre: InstancePre<PluginCtx>) -> wasmtime::Result<PluginPre> {
        match v2::PluginPre::new(pre.clone()) {
            Ok(p) => Ok(PluginPre::V2(p)),
            Err(current) => v1::PluginPre::new(pre).map(PluginPre::V1).map_err(|_| current),
        }
    }

    /// The contract version the component targets.
    pub fn contract(&self) -> Contract {
        match self {
            PluginPre::V1(_) => Contract::V0_1,
            PluginPre::V2(_) => Contract::V0_2,
        }
    }

    /// The component.
    pub fn component(&self) -> &wasmtime::component::Component {
        match self {
            PluginPre::V1(p) => p.instance_pre().component(),
            PluginPre::V2(p) => p.instance_pre().component(),
        }
    }

    /// The engine the component was compiled for.
    pub fn engine(&self) -> &wasmtime::Engine {
        match self {
            PluginPre::V1(p) => p.engine(),
            PluginPre::V2(p) => p.engine(),
        }
    }

    /// A fresh instance.
    pub async fn instantiate_async(&self, store: &mut Store<PluginCtx>) -> wasmtime::Result<Instance> {
        Ok(match self {
            PluginPre::V1(p) => Instance::V1(p.instantiate_async(store).await?),
            PluginPre::V2(p) => Instance::V2(p.instantiate_async(store).await?),
        })
    }
}

/// A live instance of a plugin.
pub enum Instance {
    /// Of a 0.1.0 component.
    V1(v1::Plugin),
    /// Of a 0.2.0 component.
    V2(v2::Plugin),
}

impl Instance {
    /// Calls `handle-event`; the inner error is the plugin's own message.
    pub async fn handle_event(&self, store: &mut Store<PluginCtx>, event: &Event) -> wasmtime::Result<Result<(), String>> {
        Ok(match self {
            Instance::V1(p) => {
                let Some(input) = to_v1(event) else {
                    return Ok(Err(format!(
                        "a `{}` event cannot reach a {} plugin",
                        event.kind.as_str(),
                        Contract::V0_1
                    )));
                };
                p.call_handle_event(store, &input).await?.map_err(|e| e.message)
            }
            Instance::V2(p) => p.call_handle_event(store, &to_v2(event)).await?.map_err(|e| e.message),
        })
    }
}

/// Builds one version's `sms-event` record from an event: the fields both
/// versions share, plus `$extra`.
macro_rules! sms_event {
    ($types:path, $e:expr, $kind:expr, { $($extra:tt)* }) => {{
        use $types as t;
        let e: &Event = $e;
        t::SmsEvent {
            tenant: e.tenant.clone(),
            kind: $kind,
            event_id: e.event_id.clone(),
            occurred_at: e.occurred_at.clone(),
            message_id: e.message_id.clone(),
            direction: match e.direction {
                Direction::Inbound => t::Direction::Inbound,
                Direction::Outbound => t::Direction::Outbound,
            },
            from: e.from.clone(),
            to: e.to.clone(),
            body: e.body.clone(),
            media_urls: e.media_urls.clone(),
            justcall_number: e.justcall_number.clone(),
            contact_name: e.contact_name.clone(),
            agent_id: e.agent_id.clone(),
            $($extra)*
        }
    }};
}

/// One version's `event-kind` for an event's kind; `$timer` for `timer`.
macro_rules! event_kind {
    ($t:ident, $kind:expr, $timer:expr) => {
        match $kind {
            EventKind::Received => $t::EventKind::Received,
            EventKind::Sent => $t::EventKind::Sent,
            EventKind::Delivered => $t::EventKind::Delivered,
            EventKind::Failed => $t::EventKind::Failed,
            EventKind::OptOut => $t::EventKind::OptOut,
            EventKind::OptIn => $t::EventKind::OptIn,
            EventKind::Timer => $timer,
        }
    };
}

/// The 0.2.0 record for an event.
pub fn to_v2(e: &Event) -> v2::switchboard::plugin0_2_0::types::SmsEvent {
    use v2::switchboard::plugin0_2_0::types as t;
    let kind = event_kind!(t, e.kind, t::EventKind::Timer);
    let timer = e.timer.as_ref().map(|f| t::TimerFiring {
        key: f.key.clone(),
        payload: f.payload.clone(),
        due_at: f.due_at.clone(),
        scheduled: f.scheduled,
    });
    sms_event!(v2::switchboard::plugin0_2_0::types, e, kind, { timer })
}

/// The 0.1.0 record for an event, if 0.1.0 has its kind.
fn to_v1(e: &Event) -> Option<v1::switchboard::plugin0_1_0::types::SmsEvent> {
    use v1::switchboard::plugin0_1_0::types as t;
    let kind = event_kind!(t, e.kind, return None);
    Some(sms_event!(v1::switchboard::plugin0_1_0::types, e, kind, {}))
}

impl v1::switchboard::plugin0_1_0::types::Host for PluginCtx {}
impl v2::switchboard::plugin0_2_0::types::Host for PluginCtx {}
