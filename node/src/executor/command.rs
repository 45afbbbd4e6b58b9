//! The `command` executor: admin-signed shell commands do the work.
//!
//! Stage only checks the payload against its content id (the commands read it through
//! `PATCHMESH_PAYLOAD`); install, verify and rollback run their commands with `sh -c`. Making
//! these commands idempotent is the patch author's part of the contract: the journal re-runs a
//! step whose outcome a crash lost.

use super::{file, run::Program, ExecError, Executor, Step, StepCtx};

/// Performs one step.
pub(super) async fn step(ex: &Executor, ctx: &mut StepCtx) -> Result<(bool, String), ExecError> {
    let spec = &ex.spec;
    match ctx.step {
        Step::Stage => file::check_payload(ex).await,
        Step::Install => {
            // `new` refused a command spec without an install command.
            let Some(cmd) = spec.install.as_deref() else {
                return Err(ExecError::BadSpec("command kind needs an install command".into()));
            };
            let out = ctx.exec(Program::Shell(cmd.to_string()), &[]).await?;
            Ok((out.success(), format!("install command: {}", out.describe())))
        }
        Step::Verify => Ok(match ctx.exec_optional(spec.verify.as_deref()).await? {
            Some(out) => (out.success(), format!("verify command: {}", out.describe())),
            None => (true, "no verify command".to_string()),
        }),
        Step::Rollback => Ok(match ctx.exec_optional(spec.rollback.as_deref()).await? {
            Some(out) => (out.success(), format!("rollback command: {}", out.describe())),
            None => (true, "no rollback command".to_string()),
        }),
    }
}
