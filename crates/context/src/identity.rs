//! Who a command runs as. Run as root on a state directory another user owns (a lab belongs
//! to `postgres`), a drill — and any command on a lab whose sites are network namespaces — works as that user — every file it writes stays the daemon's and
//! PostgreSQL's — and keeps root as its saved user id for what only root may do: start a
//! server in a network namespace, apply a drill's nftables table.

use crate::Context;

/// Run as the owner of the state directory when started as root (a lab belongs to `postgres`):
/// every file the command writes — evidence, reports, what a restore leaves in the state
/// directory — stays that user's, and PostgreSQL's programs run as it. Root stays the saved
/// user id, for what only root may do (network namespaces, nftables). Drills call it, and
/// every command on a plan whose members run in network namespaces.
pub fn become_state_owner(ctx: &Context) -> Result<(), lifeboat_core::Error> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let Ok(md) = std::fs::metadata(&ctx.state_dir) else {
        return Ok(());
    };
    let (uid, gid) = (md.uid(), md.gid());
    if uid == 0 {
        return Ok(());
    }
    // SAFETY: plain id changes of this process (glibc applies them to every thread).
    let ok = unsafe {
        libc::setgroups(1, &gid) == 0
            && libc::setresgid(gid, gid, 0) == 0
            && libc::setresuid(uid, uid, 0) == 0
    };
    if !ok {
        return Err(lifeboat_core::Error::new(
            lifeboat_core::Kind::Internal,
            format!(
                "could not switch to the state directory's owner (uid {uid}): {}",
                std::io::Error::last_os_error()
            ),
        ));
    }
    Ok(())
}

/// Whether this process may act as root (it is root, or was and keeps root as its saved id).
pub fn can_be_root() -> bool {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: getresuid writes three ids into the given locations.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    r == 0 || e == 0 || s == 0
}

/// Run a command as root (for nftables): a drill that switched to the state directory's owner
/// keeps root as its saved id and takes it back in the child only.
pub fn privileged(c: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe id calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            if libc::geteuid() != 0
                && (libc::setresgid(0, 0, 0) != 0 || libc::setresuid(0, 0, 0) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Whether a postgres member of the plan runs in a network namespace (a lab built by root).
pub fn namespaced(plan: &lifeboat_core::Plan) -> bool {
    plan.services.values().any(|s| match s {
        lifeboat_core::plan::Service::Postgres { members, .. } => {
            members.values().any(|m| m.netns.is_some())
        }
        _ => false,
    })
}
