//! Cluster: openraft membership and channel ownership.
