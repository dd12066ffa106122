pub fn run(_: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("todo")
}
pub fn client(_: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("todo")
}
