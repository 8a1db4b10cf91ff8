fn main() -> std::process::ExitCode {
    llem_agent::main()
}
