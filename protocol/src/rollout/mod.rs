//! Rollouts: admin-signed policies that move a patch through canary rings by themselves, halt
//! themselves on failure evidence, and roll back — with every node deciding alone from the same
//! signed state.
//!
//! - [`policy`]: what an admin signs (selector, rings, gates, windows, commands).
//! - [`target`]: who is targeted, ring membership (hash of rollout id and node id → percentile,
//!   plus label rings), maintenance windows in the node's own time zone, dpkg version order.
//! - [`alarms`]: failure reports, flooded fleet-wide so every node can reach a halt verdict.
//! - [`verdict`]: approvals, pause/resume/abort, gates and halts from replicated evidence.
//! - [`engine`]: this node's targeting, start decision and install journal.
//!
//! ## Safety argument (what the simulator's `blast_radius` checks)
//! A node of ring `k > 0` starts only when every earlier ring's gate passes, and a gate needs
//! succeeded members, which count only after their own soak (`min_soak_ms`). A failing member
//! reports within its verify step, long before a soak ends, and its report floods to every node
//! (one hop per relay). So a gate cannot pass on a node before the failure reports of that ring
//! have reached it, provided the soak is longer than the flood takes; once a ring's failures
//! exceed its gate every node holds the halt, and a halt stops new installs everywhere.

pub mod activity;
pub mod alarms;
pub mod engine;
pub mod policy;
pub mod target;
pub mod verdict;

pub use engine::{Action, Effect, EffectResult, Engine, JournalEntry, RolloutEvent, Step};
pub use policy::{parse_predicate, parse_window};
pub use target::{Facts, NO_RING};
pub use verdict::{Control, Policies, RingStats, Verdict};
