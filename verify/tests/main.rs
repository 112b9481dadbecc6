//! verify's integration tests, one binary: the loaders, tokenizer and dense reference on the
//! tiny random model and the default model, and the dequantizers against the `gguf` package.

mod dense_host;
mod gguf_py;
mod model_loaders;
mod model_smollm2;
mod model_tokenizer;
mod smollm2_greedy;
