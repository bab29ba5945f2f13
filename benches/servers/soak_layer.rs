//! `benches/soak.sh` with the layer alone (the system allocator: memory not tracked).

#[path = "soak/common.rs"]
mod common;

fn main() {
    common::run("layer");
}
