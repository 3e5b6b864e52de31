//! download (to be written)
