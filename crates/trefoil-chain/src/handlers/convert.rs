//! JSON values to Lua values and back: event data in, emitted attributes out.

use mlua::{Lua, Value};

/// Nesting deeper than this is cut: data comes from outside and recursion must stay bounded.
const MAX_DEPTH: usize = 32;

pub fn to_lua(lua: &Lua, json: &serde_json::Value) -> mlua::Result<Value> {
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

pub fn to_json(value: &Value) -> serde_json::Value {
    to_json_at(value, 0)
}

fn to_json_at(value: &Value, depth: usize) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Nil => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::Integer(i) => J::from(*i),
        Value::Number(n) => serde_json::Number::from_f64(*n).map(J::Number).unwrap_or(J::Null),
        Value::String(s) => J::String(s.to_string_lossy()),
        Value::Table(_) if depth >= MAX_DEPTH => J::Null,
        Value::Table(t) => {
            // A table with 1..n keys is an array; anything else an object with string keys.
            let len = t.raw_len();
            if len > 0 {
                J::Array((1..=len).map(|i| t.raw_get::<Value>(i).map(|v| to_json_at(&v, depth + 1)).unwrap_or(J::Null)).collect())
            } else {
                let mut map = serde_json::Map::new();
                for (k, v) in t.clone().pairs::<Value, Value>().flatten() {
                    let key = match k {
                        Value::String(s) => s.to_string_lossy(),
                        Value::Integer(i) => i.to_string(),
                        _ => continue,
                    };
                    map.insert(key, to_json_at(&v, depth + 1));
                }
                J::Object(map)
            }
        }
        _ => J::Null,
    }
}
