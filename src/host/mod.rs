//! What snapfs asks the host system, below the FUSE layer and the daemon: the mount table
//! ([`mountinfo`]), where a path's bytes are really stored and whether that leads back to this
//! mount ([`reach`]), and the file systems to freeze around a snapshot ([`freeze`]). The
//! control commands (used by the FUSE layer) and the daemon both call these, so they live
//! under both rather than inside the daemon.

pub mod freeze;
pub mod mountinfo;
pub mod reach;
pub mod replace;
