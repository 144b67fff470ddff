//! Client frames into a session's reader (`session/frames.rs` and the reader in
//! `session.rs`), in the chunks the fuzzer picks: the events sent to the session loop and
//! the Pongs and close queued for the client must be what the RFC 6455 model says, for
//! every chunking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_fuzz::ws::{Chunked, Input, model, policy_for};

fuzz_target!(|data: &[u8]| {
    let Some(input) = Input::parse(data) else { return };
    let policy = policy_for(input.limit, input.burst);
    let reader = Chunked::new(input.stream, input.sizes);
    let (events, queued) = palisade_fuzz::runtime().block_on(palisade_node::fuzzing::client_reader(palisade_fuzz::node(), policy, reader));
    let (want_events, want_queued) = model(&input);
    assert_eq!(events, want_events, "events (limit {}, burst {})", input.limit, input.burst);
    assert_eq!(queued, want_queued, "queued for the client");
});
