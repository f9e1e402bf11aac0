//! Measurement tools.
