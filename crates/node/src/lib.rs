//! The Palisade edge node.
