fn main() {
    println!("mmengine");
}
