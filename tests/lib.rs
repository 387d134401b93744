//! Shared helpers for the replay and end-to-end tests.
