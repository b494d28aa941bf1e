//! edgecap-engine: the captioning engine shared by the device firmware and host-tools,
//! so that the host validates exactly the code the device runs.

pub mod fsutil;
pub mod npy;
pub mod tokenizer;
