//! The files a bundle is made of and how they are written: the bundle directory and its
//! verification (`bundle`), its manifest (`manifest`), NumPy `.npy` arrays (`npy`), atomic
//! writes (`fsutil`).

pub mod bundle;
pub mod fsutil;
pub mod manifest;
pub mod npy;
