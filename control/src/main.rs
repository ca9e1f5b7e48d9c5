//! `mesh-control serve`.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("mesh-control serve: not built yet")
}
