//! JSON values to Lua values and back: event data in, emitted attributes out.

use mlua::{Lua, Value};

/// Nesting deeper than this is cut: data comes from outside and recursion must stay bounded.
const MAX_DEPTH: usize = 32;

pub(super) fn to_lua(lua: &Lua, json: &serde_json::Value) -> mlua::Result<Value> {
    to_lua_at(lua, json, 0)
}

fn to_lua_at(lua: &Lua, json: &serde_json::Value, depth: usize) -> mlua::Result<Value> {
    use serde_json::Value as J;
    Ok(match json {
        J::Null => Value::Nil,
        J::Bool(b) => Value::Boolean(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Integer(i),
            None => Value::Number(n.as_f64().unwrap_or(0.0)),
        },
        J::String(s) => Value::String(lua.create_string(s)?),
        J::Array(_) | J::Object(_) if depth >= MAX_DEPTH => Value::Nil,
        J::Array(items) => {
            let t = lua.create_table_with_capacity(items.len(), 0)?;
            for item in items {
                t.raw_push(to_lua_at(lua, item, depth + 1)?)?;
            }
            Value::Table(t)
        }
        J::Object(map) => {
            let t = lua.create_table_with_capacity(0, map.len())?;
            for (k, v) in map {
                t.raw_set(k.as_str(), to_lua_at(lua, v, depth + 1)?)?;
            }
            Value::Table(t)
        }
    })
}

/// Values at most in one conversion to JSON: a table can hold the same
/// subtable many times over, so 32 levels of `t = {t, t}` would expand to
/// 2^32 values (the depth bound alone let that through).
pub(super) const MAX_JSON_VALUES: usize = 10_000;
/// String bytes at most in one conversion to JSON.
pub(super) const MAX_JSON_BYTES: usize = 256 * 1024;

/// A value that would convert to more than [`MAX_JSON_VALUES`] values or [`MAX_JSON_BYTES`] bytes.
#[derive(Debug, thiserror::Error)]
#[error("value too large for JSON (more than {MAX_JSON_VALUES} values or {MAX_JSON_BYTES} bytes)")]
pub(super) struct TooLarge;

/// What a conversion may still produce.
struct Allowance {
    values: usize,
    bytes: usize,
}

impl Allowance {
    fn take(&mut self, bytes: usize) -> Result<(), TooLarge> {
        self.values = self.values.checked_sub(1).ok_or(TooLarge)?;
        self.bytes = self.bytes.checked_sub(bytes).ok_or(TooLarge)?;
        Ok(())
    }
}

/// Converts `value` to JSON; also how many values that took (the work to charge).
pub(super) fn to_json(value: &Value) -> Result<(serde_json::Value, usize), TooLarge> {
    let mut left = Allowance { values: MAX_JSON_VALUES, bytes: MAX_JSON_BYTES };
    let json = to_json_at(value, 0, &mut left)?;
    Ok((json, MAX_JSON_VALUES - left.values))
}

fn to_json_at(value: &Value, depth: usize, left: &mut Allowance) -> Result<serde_json::Value, TooLarge> {
    use serde_json::Value as J;
    Ok(match value {
        Value::Nil => {
            left.take(0)?;
            J::Null
        }
        Value::Boolean(b) => {
            left.take(0)?;
            J::Bool(*b)
        }
        Value::Integer(i) => {
            left.take(0)?;
            J::from(*i)
        }
        Value::Number(n) => {
            left.take(0)?;
            serde_json::Number::from_f64(*n).map(J::Number).unwrap_or(J::Null)
        }
        Value::String(s) => {
            let bytes = s.as_bytes();
            left.take(bytes.len())?;
            J::String(String::from_utf8_lossy(&bytes).into_owned())
        }
        Value::Table(_) if depth >= MAX_DEPTH => {
            left.take(0)?;
            J::Null
        }
        Value::Table(t) => {
            left.take(0)?;
            // A table with 1..n keys is an array; anything else an object with string keys.
            let len = t.raw_len();
            if len > 0 {
                let mut items = Vec::new();
                for i in 1..=len {
                    let item = t.raw_get::<Value>(i).unwrap_or(Value::Nil);
                    items.push(to_json_at(&item, depth + 1, left)?);
                }
                J::Array(items)
            } else {
                let mut map = serde_json::Map::new();
                for (k, v) in t.clone().pairs::<Value, Value>().flatten() {
                    let key = match k {
                        Value::String(s) => {
                            let bytes = s.as_bytes();
                            left.take(bytes.len())?;
                            String::from_utf8_lossy(&bytes).into_owned()
                        }
                        Value::Integer(i) => i.to_string(),
                        _ => continue,
                    };
                    map.insert(key, to_json_at(&v, depth + 1, left)?);
                }
                J::Object(map)
            }
        }
        _ => {
            left.take(0)?;
            J::Null
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_subtables_cannot_expand_without_bound() {
        let lua = mlua::Lua::new();
        // 2^16 leaves once expanded: over the bound, and cheap enough if the bound regressed.
        let t: Value = lua.load("local t = {1} for i = 1, 16 do t = {t, t} end return t").eval().unwrap();
        assert!(to_json(&t).is_err());
        let small: Value = lua.load("return {a = {1, 2}, b = 'x'}").eval().unwrap();
        assert_eq!(to_json(&small).unwrap().0, serde_json::json!({"a": [1, 2], "b": "x"}));
    }
}
