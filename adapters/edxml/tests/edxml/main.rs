//! The edXML codec's tests: the codec as the gateway uses it, property
//! round trips, the project's fixtures and the reference samples. Bad input
//! (bounded memory and time, measured per process) is a binary of its own.

mod api;
mod common;
mod fixtures;
mod roundtrip;
mod samples;
