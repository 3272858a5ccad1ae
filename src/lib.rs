//! snapfs: the Linux kernel's device-mapper snapshot targets (snapshot-origin, snapshot,
//! snapshot-merge) in user space, over the kernel's own COW format.
//!
//! Layers, bottom up: [`device`] (backing devices), [`store`] (exception stores: the on-disk
//! format), [`table`] (in-memory exceptions), [`volume`] (origin and snapshot semantics). The
//! FUSE layer and the command line sit on top and are the only parts that know about files.

pub mod backup;
pub mod changes;
pub mod control;
pub mod daemon;
pub mod device;
pub mod escape;
pub mod features;
pub mod fuse;
pub mod host;
pub mod invariant;
pub mod lifecycle;
pub mod names;
pub mod options;
pub mod rangelock;
pub mod registry;
pub mod rng;
pub mod status;
pub mod store;
pub mod table;
pub mod units;
pub mod volume;

pub use volume::{
    OpenError, Payload, Snapshot, SnapshotConfig, Volume, VolumeError, VolumeOptions,
};
