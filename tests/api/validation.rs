//! Issue 4 through HTTP (being written).
