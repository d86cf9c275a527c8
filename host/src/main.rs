fn main() {
    let _ = bulkhead::config::default_path();
}
