//! The sans-IO packet core of one data-plane core.
