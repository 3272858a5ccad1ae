//! Unit tests of the persistent store (hand-written COW images, field by field).
