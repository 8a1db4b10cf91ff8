//! llem's end-to-end tests: the real binaries on real files, real peers. One test
//! binary, a module per area.

mod agent;
mod candle;
mod cluster;
mod cluster_faults;
mod models;
mod run;
mod run_dir;
mod server;
mod server_faults;
mod slurm;
mod slurm_faults;
mod sweeps;
