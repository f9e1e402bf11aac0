//! The glommio shell: pinned executors, sockets, ring polling.
