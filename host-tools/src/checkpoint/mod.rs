//! Reading weights from the files users have: PyTorch checkpoints and safetensors.
