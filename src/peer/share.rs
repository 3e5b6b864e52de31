//! share (to be written)
