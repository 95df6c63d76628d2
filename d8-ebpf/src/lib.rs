//! Library target so that d8-userspace can name this crate as a build dependency (aya-template
//! does the same); the programs are in the `d8-probes` binary.
#![no_std]
