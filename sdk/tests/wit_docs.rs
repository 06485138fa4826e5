//! The WIT is the contract for authors in every language, so every item in it is documented:
//! each interface, world, type, field, case and function has a `///` comment right above it.

#[test]
fn every_item_of_the_wit_is_documented() {
    let wit = include_str!("../wit/switchboard.wit");
    let lines: Vec<&str> = wit.lines().map(str::trim).collect();
    let mut undocumented = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let is_item = !line.is_empty()
            && !line.starts_with("//")
            && !line.starts_with('}')
            && !line.starts_with("package ")
            && !line.starts_with("import ")
            && !line.starts_with("use ");
        let documented = index > 0 && lines[index - 1].starts_with("///");
        if is_item && !documented {
            undocumented.push(format!("line {}: {line}", index + 1));
        }
    }
    assert!(
        undocumented.is_empty(),
        "undocumented WIT items:\n{}",
        undocumented.join("\n")
    );
}
