//! Fair admission of deliveries: each tenant has its own queue and in-flight
//! cap, tenants are served round-robin (a weight lets a tenant take several
//! turns in a row), and an invocation is admitted only while the host's
//! wasm memory budget has room for its memory limit. A tenant at its cap, or
//! whose next delivery does not fit the budget, waits in its own queue; it
//! never delays another tenant's next delivery.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// How one tenant shares the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// Deliveries of the tenant running at once.
    pub max_concurrent: usize,
    /// Turns the tenant takes each time round (1 = plain round-robin).
    pub weight: u32,
}

/// What the whole host admits at once.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Invocations running at once (the instance pool's size).
    pub max_running: usize,
    /// Bytes of wasm linear memory that running invocations may hold
    /// between them, by their memory limits.
    pub memory_bytes: usize,
    /// A tenant's share when it has none of its own.
    pub default_share: Share,
    /// Tenants' own shares.
    pub shares: HashMap<String, Share>,
}

struct TenantQueue<T> {
    queue: VecDeque<(T, usize)>,
    running: usize,
    share: Share,
    /// Turns taken in the current round.
    turns: u32,
    in_ring: bool,
}

struct State<T> {
    tenants: HashMap<Arc<str>, TenantQueue<T>>,
    /// Tenants with queued work, in the order they are served.
    ring: VecDeque<Arc<str>>,
    running: usize,
    memory: usize,
}

/// The per-tenant queues. `push` from anywhere; one pump takes work with
/// [`FairQueue::next`] and holds the returned [`Admission`] while it runs.
pub struct FairQueue<T> {
    state: Mutex<State<T>>,
    budget: Budget,
    wake: Notify,
}

impl<T> std::fmt::Debug for FairQueue<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FairQueue").field("budget", &self.budget).finish()
    }
}

/// A running item's hold on its tenant's slot, the host's slot and its
/// memory; released when dropped.
pub struct Admission<T> {
    queue: Arc<FairQueue<T>>,
    tenant: Arc<str>,
    memory: usize,
}

impl<T> std::fmt::Debug for Admission<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("tenant", &self.tenant)
            .field("memory", &self.memory)
            .finish()
    }
}

/// How much is queued and running, for tests and status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Load {
    /// Items waiting in all queues.
    pub queued: usize,
    /// Items running.
    pub running: usize,
    /// Memory reserved by running items, bytes.
    pub memory_bytes: usize,
}

impl<T> FairQueue<T> {
    /// Empty queues under `budget`.
    pub fn new(budget: Budget) -> Arc<FairQueue<T>> {
        Arc::new(FairQueue {
            state: Mutex::new(State {
                tenants: HashMap::new(),
                ring: VecDeque::new(),
                running: 0,
                memory: 0,
            }),
            budget,
            wake: Notify::new(),
        })
    }

    /// The most memory one item may reserve: the whole budget.
    pub fn memory_budget(&self) -> usize {
        self.budget.memory_bytes
    }

    /// Queues `item` for `tenant`; it needs `memory` bytes of the budget
    /// while it runs (cut to the whole budget, so it can always run alone).
    pub fn push(&self, tenant: &str, item: T, memory: usize) {
        let memory = memory.min(self.budget.memory_bytes);
        let mut guard = crate::sync::lock(&self.state);
        let st = &mut *guard;
        let key = match st.tenants.get_key_value(tenant) {
            Some((k, _)) => k.clone(),
            None => {
                let share = self.budget.shares.get(tenant).copied().unwrap_or(self.budget.default_share);
                let k: Arc<str> = Arc::from(tenant);
                st.tenants.insert(
                    k.clone(),
                    TenantQueue {
                        queue: VecDeque::new(),
                        running: 0,
                        share,
                        turns: 0,
                        in_ring: false,
                    },
                );
                k
            }
        };
        let tq = st.tenants.get_mut(&key).expect("inserted above");
        tq.queue.push_back((item, memory));
        if !tq.in_ring {
            tq.in_ring = true;
            st.ring.push_back(key);
        }
        drop(guard);
        self.wake.notify_one();
    }

    /// Waits for the next item that may run: the next tenant round the ring
    /// that is under its cap and whose oldest item fits the memory budget.
    pub async fn next(self: &Arc<Self>) -> (T, Admission<T>) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(taken) = self.take() {
                return taken;
            }
            notified.await;
        }
    }

    fn take(self: &Arc<Self>) -> Option<(T, Admission<T>)> {
        let mut st = crate::sync::lock(&self.state);
        let st = &mut *st;
        if st.running >= self.budget.max_running {
            return None;
        }
        for _ in 0..st.ring.len() {
            let tenant = st.ring.pop_front()?;
            let tq = st.tenants.get_mut(&tenant).expect("ring tenants have queues");
            let Some(&(_, memory)) = tq.queue.front() else {
                tq.in_ring = false;
                tq.turns = 0;
                continue;
            };
            if tq.running >= tq.share.max_concurrent || st.memory + memory > self.budget.memory_bytes {
                // Waits in its own queue; the others are still served.
                tq.turns = 0;
                st.ring.push_back(tenant);
                continue;
            }
            let (item, memory) = tq.queue.pop_front().expect("front checked");
            tq.running += 1;
            tq.turns += 1;
            if tq.queue.is_empty() {
                tq.in_ring = false;
                tq.turns = 0;
            } else if tq.turns < tq.share.weight {
                st.ring.push_front(tenant.clone());
            } else {
                tq.turns = 0;
                st.ring.push_back(tenant.clone());
            }
            st.running += 1;
            st.memory += memory;
            let admission = Admission {
                queue: self.clone(),
                tenant,
                memory,
            };
            return Some((item, admission));
        }
        None
    }

    /// What is queued and running now.
    pub fn load(&self) -> Load {
        let st = crate::sync::lock(&self.state);
        Load {
            queued: st.tenants.values().map(|t| t.queue.len()).sum(),
            running: st.running,
            memory_bytes: st.memory,
        }
    }
}

impl<T> Drop for Admission<T> {
    fn drop(&mut self) {
        let mut guard = crate::sync::lock(&self.queue.state);
        let st = &mut *guard;
        st.running -= 1;
        st.memory -= self.memory;
        if let Some(tq) = st.tenants.get_mut(&self.tenant) {
            tq.running -= 1;
            if tq.running == 0 && tq.queue.is_empty() && !tq.in_ring {
                // Idle: forget the tenant until it has work again.
                st.tenants.remove(&self.tenant);
            }
        }
        drop(guard);
        self.queue.wake.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(max_running: usize, memory_bytes: usize, cap: usize) -> Budget {
        Budget {
            max_running,
            memory_bytes,
            default_share: Share {
                max_concurrent: cap,
                weight: 1,
            },
            shares: HashMap::new(),
        }
    }

    fn now<T>(q: &Arc<FairQueue<T>>) -> Option<(T, Admission<T>)> {
        q.take()
    }

    #[test]
    fn a_tenant_backlog_does_not_delay_another_tenant() {
        let q = FairQueue::new(budget(8, usize::MAX, 2));
        for i in 0..100 {
            q.push("noisy", ("noisy", i), 0);
        }
        let (a, _a) = now(&q).unwrap();
        let (b, _b) = now(&q).unwrap();
        assert_eq!((a, b), (("noisy", 0), ("noisy", 1)));
        // Noisy is at its cap: it waits, and the victim's first item is next.
        assert!(now(&q).is_none());
        q.push("victim", ("victim", 0), 0);
        assert_eq!(now(&q).unwrap().0, ("victim", 0));
        assert_eq!(q.load().queued, 98);
    }

    #[test]
    fn tenants_take_turns_by_weight() {
        let mut b = budget(100, usize::MAX, 100);
        b.shares.insert(
            "heavy".into(),
            Share {
                max_concurrent: 100,
                weight: 2,
            },
        );
        let q = FairQueue::new(b);
        for i in 0..4 {
            q.push("heavy", ("heavy", i), 0);
            q.push("light", ("light", i), 0);
        }
        // Admissions are kept, so nothing frees a slot while the order is read.
        let taken: Vec<_> = std::iter::from_fn(|| now(&q)).collect();
        let order: Vec<&str> = taken.iter().map(|(item, _)| item.0).collect();
        assert_eq!(order, ["heavy", "heavy", "light", "heavy", "heavy", "light", "light", "light"]);
    }

    #[test]
    fn memory_is_reserved_until_the_admission_drops() {
        let q = FairQueue::new(budget(8, 100, 8));
        q.push("a", 1, 60);
        q.push("a", 2, 60);
        q.push("b", 3, 30);
        let (first, adm) = now(&q).unwrap();
        assert_eq!(first, 1);
        // a's next needs 60 of the 40 left: it waits; b's 30 fits.
        assert_eq!(now(&q).unwrap().0, 3);
        assert!(now(&q).is_none());
        drop(adm);
        let (second, adm) = now(&q).unwrap();
        assert_eq!(second, 2);
        // An item bigger than the whole budget is cut to it: it runs alone.
        q.push("c", 4, 1_000);
        assert!(now(&q).is_none());
        drop(adm);
        assert_eq!(now(&q).unwrap().0, 4);
        assert_eq!(q.load(), Load::default());
    }

    #[tokio::test]
    async fn next_wakes_when_a_slot_frees() {
        let q = FairQueue::new(budget(1, usize::MAX, 1));
        q.push("a", 1, 0);
        q.push("a", 2, 0);
        let (_, adm) = q.next().await;
        let waiter = tokio::spawn({
            let q = q.clone();
            async move { q.next().await.0 }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(adm);
        assert_eq!(waiter.await.unwrap(), 2);
    }
}
