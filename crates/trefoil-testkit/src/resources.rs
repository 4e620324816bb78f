//! Resources as the processes under test read them: YAML files and API
//! bodies. Tests build them as typed `trefoil_model` values, so a field the
//! model renames or retypes breaks the test at compile time instead of
//! surfacing as a puzzling runtime error; YAML text stays only where the
//! text itself is the point (located errors, YAML bombs, malformed input).

use trefoil_model::Resource;

/// What can be written as a YAML resource file.
pub trait ToYaml {
    /// The YAML text: documents separated by `---`.
    fn to_yaml(&self) -> String;
}

/// YAML text as it is, for tests about the text itself.
impl ToYaml for str {
    fn to_yaml(&self) -> String {
        self.to_string()
    }
}

impl ToYaml for String {
    fn to_yaml(&self) -> String {
        self.clone()
    }
}

/// One document, written as `trefoil get -o yaml` writes it.
impl ToYaml for Resource {
    fn to_yaml(&self) -> String {
        // A Resource is plain data: its serialization cannot fail.
        let value = serde_json::to_value(self).expect("a Resource serializes to JSON");
        trefoil_model::located_yaml::to_string(&value)
    }
}

impl ToYaml for [Resource] {
    fn to_yaml(&self) -> String {
        self.iter().map(ToYaml::to_yaml).collect::<Vec<_>>().join("---\n")
    }
}

impl ToYaml for Vec<Resource> {
    fn to_yaml(&self) -> String {
        self.as_slice().to_yaml()
    }
}

impl<T: ToYaml + ?Sized> ToYaml for &T {
    fn to_yaml(&self) -> String {
        (**self).to_yaml()
    }
}
