//! ratelimit (to be written)
