//! license
