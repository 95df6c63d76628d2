//! Live API (being written).
