//! Training in Rust with candle: the ClipCap mapper, the DeCap decoder, GPT-2 distillation and
//! the small CLIP-style dual encoder behind the default model.
//!
//! Layout of the code, model by model as in candle's examples:
//! * [`params`]: where weights come from (a checkpoint the exporter can read, or a seeded
//!   initialisation) and which of them are trained;
//! * [`layers`], [`gpt2`], [`clip`]: the models, with the tensor names and shapes of the
//!   transformers / reference checkpoints, so a trained model exports like a downloaded one;
//! * [`optim`]: AdamW whose moments are saved with the weights (resumable runs);
//! * [`run`]: the loop every trainer shares: batches from a seeded schedule, progress bar,
//!   periodic checkpoints, resume;
//! * [`decap`], [`clipcap`], [`distill`], [`contrastive`]: the recipes.

pub mod cache;
pub mod clip;
pub mod clipcap;
pub mod contrastive;
pub mod data;
pub mod decap;
pub mod distill;
pub mod gpt2;
pub mod layers;
pub mod optim;
pub mod params;
pub mod run;
