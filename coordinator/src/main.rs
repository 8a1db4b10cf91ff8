fn main() -> std::process::ExitCode {
    llem::main()
}
