//! Every GPU kernel, forward and backward, against the CPU reference in `densegpu::reference`,
//! on random inputs with outputs poisoned (NaN) before each run.

mod common;

mod batchnorm;
mod conv;
mod elementwise;
mod linear;
mod loss;
mod nan;
mod pool;
mod realistic;
mod sgd;
