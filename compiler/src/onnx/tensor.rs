//! ONNX `TensorProto`s to and from host [`Tensor`]s.
//!
//! Invariants:
//! - Every size read from a proto is checked before anything is allocated:
//!   dims are non-negative, the rank is at most [`MAX_RANK`], the element
//!   count and byte length do not overflow, and the data present (raw bytes
//!   or a typed field) holds exactly that many elements. A tensor can never
//!   be larger than the bytes it was decoded from.
//! - Only the dtypes ampoule has are accepted (FLOAT, DOUBLE, INT8, UINT8,
//!   INT16, UINT16, INT32, UINT32, INT64, UINT64, BOOL); anything else is an
//!   error naming the data type.
//! - External data and segments are refused: a model never makes the
//!   importer open a file it was not given.
//! - Integers stored widened (`int32_data` for INT8, UINT8, INT16, UINT16
//!   and BOOL; `uint64_data` for UINT32) must fit their type; BOOL values are
//!   normalized to 0 or 1.

use ampoule_kernels::{checked_numel, Bool8, DType, Tensor, MAX_RANK};

use super::proto::{data_location, data_type, TensorProto};

/// The ampoule dtype of an ONNX `TensorProto.DataType`, if it has one.
pub fn dtype_of(t: i32) -> Option<DType> {
    Some(match t {
        data_type::FLOAT => DType::F32,
        data_type::DOUBLE => DType::F64,
        data_type::INT8 => DType::I8,
        data_type::UINT8 => DType::U8,
        data_type::INT16 => DType::I16,
        data_type::UINT16 => DType::U16,
        data_type::INT32 => DType::I32,
        data_type::UINT32 => DType::U32,
        data_type::INT64 => DType::I64,
        data_type::UINT64 => DType::U64,
        data_type::BOOL => DType::Bool,
        _ => return None,
    })
}

/// The ONNX `TensorProto.DataType` of an ampoule dtype.
pub fn onnx_type(d: DType) -> i32 {
    match d {
        DType::F32 => data_type::FLOAT,
        DType::F64 => data_type::DOUBLE,
        DType::I8 => data_type::INT8,
        DType::U8 => data_type::UINT8,
        DType::I16 => data_type::INT16,
        DType::U16 => data_type::UINT16,
        DType::I32 => data_type::INT32,
        DType::U32 => data_type::UINT32,
        DType::I64 => data_type::INT64,
        DType::U64 => data_type::UINT64,
        DType::Bool => data_type::BOOL,
    }
}

/// The dtype of an ONNX data type, or an error naming it.
pub fn require_dtype(t: i32) -> Result<DType, String> {
    dtype_of(t).ok_or_else(|| {
        format!(
            "data type {} ({t}) is not supported (use FLOAT, DOUBLE, INT8, UINT8, INT16, UINT16, INT32, UINT32, INT64, UINT64 or BOOL)",
            data_type::name(t)
        )
    })
}

/// A tensor from its proto. Errors say what is wrong, without naming the
/// tensor (the caller knows where it came from).
pub fn from_proto(p: &TensorProto) -> Result<Tensor, String> {
    if p.data_location == data_location::EXTERNAL || !p.external_data.is_empty() {
        return Err("external data is not supported; embed the tensor's data in the model".into());
    }
    if p.segment.is_some() {
        return Err("segmented tensors are not supported".into());
    }
    let dtype = require_dtype(p.data_type)?;
    if p.dims.len() > MAX_RANK {
        return Err(format!(
            "rank {} exceeds the maximum of {MAX_RANK}",
            p.dims.len()
        ));
    }
    let shape = p
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("dims {:?} has a negative dim", p.dims)))
        .collect::<Result<Vec<usize>, String>>()?;
    let numel = checked_numel(&shape).ok_or_else(|| format!("dims {:?} overflow", p.dims))?;
    let count_err = |field: &str, len: usize| {
        format!(
            "dims {:?} need {numel} elements but `{field}` holds {len}",
            p.dims
        )
    };
    let tensor_err = |e: ampoule_kernels::TensorError| e.to_string();
    if !p.raw_data.is_empty() {
        let expected = numel
            .checked_mul(dtype.size())
            .ok_or_else(|| format!("dims {:?} overflow", p.dims))?;
        if p.raw_data.len() != expected {
            return Err(format!(
                "dims {:?} of {dtype} need {expected} bytes but `raw_data` holds {}",
                p.dims,
                p.raw_data.len()
            ));
        }
        if dtype == DType::Bool {
            let v: Vec<Bool8> = p
                .raw_data
                .iter()
                .map(|&b| Bool8(u8::from(b != 0)))
                .collect();
            return Tensor::from_vec(&shape, v).map_err(tensor_err);
        }
        return Tensor::from_bytes(dtype, &shape, &p.raw_data).map_err(tensor_err);
    }
    fn exact<T: Clone>(
        v: &[T],
        numel: usize,
        field: &str,
        err: &dyn Fn(&str, usize) -> String,
    ) -> Result<Vec<T>, String> {
        if v.len() == numel {
            Ok(v.to_vec())
        } else {
            Err(err(field, v.len()))
        }
    }
    fn narrow<S: Copy + std::fmt::Display, T: TryFrom<S>>(
        v: &[S],
        field: &str,
        dtype: DType,
    ) -> Result<Vec<T>, String> {
        v.iter()
            .map(|&x| {
                T::try_from(x).map_err(|_| format!("`{field}` value {x} does not fit {dtype}"))
            })
            .collect()
    }
    match dtype {
        DType::F32 => Tensor::from_vec(
            &shape,
            exact(&p.float_data, numel, "float_data", &count_err)?,
        ),
        DType::F64 => Tensor::from_vec(
            &shape,
            exact(&p.double_data, numel, "double_data", &count_err)?,
        ),
        DType::I64 => Tensor::from_vec(
            &shape,
            exact(&p.int64_data, numel, "int64_data", &count_err)?,
        ),
        DType::I32 => Tensor::from_vec(
            &shape,
            exact(&p.int32_data, numel, "int32_data", &count_err)?,
        ),
        DType::U64 => Tensor::from_vec(
            &shape,
            exact(&p.uint64_data, numel, "uint64_data", &count_err)?,
        ),
        DType::U32 => {
            let v = exact(&p.uint64_data, numel, "uint64_data", &count_err)?;
            Tensor::from_vec(&shape, narrow::<u64, u32>(&v, "uint64_data", dtype)?)
        }
        DType::I8 | DType::U8 | DType::I16 | DType::U16 | DType::Bool => {
            let v = exact(&p.int32_data, numel, "int32_data", &count_err)?;
            let f = "int32_data";
            match dtype {
                DType::I8 => Tensor::from_vec(&shape, narrow::<i32, i8>(&v, f, dtype)?),
                DType::U8 => Tensor::from_vec(&shape, narrow::<i32, u8>(&v, f, dtype)?),
                DType::I16 => Tensor::from_vec(&shape, narrow::<i32, i16>(&v, f, dtype)?),
                DType::U16 => Tensor::from_vec(&shape, narrow::<i32, u16>(&v, f, dtype)?),
                _ => Tensor::from_vec(&shape, v.iter().map(|&b| Bool8(u8::from(b != 0))).collect()),
            }
        }
    }
    .map_err(tensor_err)
}

/// A proto of `t` named `name`, with its data in `raw_data`
/// (little-endian, as ONNX requires).
pub fn to_proto(name: &str, t: &Tensor) -> TensorProto {
    TensorProto {
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: onnx_type(t.dtype()),
        name: name.to_string(),
        raw_data: t.bytes().to_vec(),
        ..Default::default()
    }
}

/// Decodes a serialized `TensorProto` (an ONNX test-data `.pb` file).
pub fn decode(bytes: &[u8]) -> Result<Tensor, String> {
    use prost::Message;
    let p = TensorProto::decode(bytes).map_err(|e| format!("not a TensorProto: {e}"))?;
    from_proto(&p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_typed_data_round_trip() {
        let t = Tensor::from_vec(&[2, 2], vec![1.0f32, -2.0, 3.5, 0.0]).unwrap();
        let p = to_proto("w", &t);
        assert_eq!(
            from_proto(&p).unwrap().to_vec::<f32>().unwrap(),
            [1.0, -2.0, 3.5, 0.0]
        );
        let typed = TensorProto {
            dims: vec![3],
            data_type: data_type::INT8,
            int32_data: vec![-1, 5, 127],
            ..Default::default()
        };
        assert_eq!(
            from_proto(&typed).unwrap().to_vec::<i8>().unwrap(),
            [-1, 5, 127]
        );
        let bools = TensorProto {
            dims: vec![2],
            data_type: data_type::BOOL,
            raw_data: vec![0, 7],
            ..Default::default()
        };
        assert_eq!(
            from_proto(&bools).unwrap().to_vec::<Bool8>().unwrap(),
            [Bool8(0), Bool8(1)]
        );
        use prost::Message;
        assert_eq!(decode(&p.encode_to_vec()).unwrap().shape(), [2, 2]);
    }

    #[test]
    fn sixteen_bit_and_unsigned_types_decode_from_typed_and_raw_data() {
        let typed = |data_type: i32, int32_data: Vec<i32>, uint64_data: Vec<u64>| TensorProto {
            dims: vec![3],
            data_type,
            int32_data,
            uint64_data,
            ..Default::default()
        };
        let raw = |data_type: i32, raw_data: Vec<u8>| TensorProto {
            dims: vec![3],
            data_type,
            raw_data,
            ..Default::default()
        };
        let le = |v: &[u64], width: usize| -> Vec<u8> {
            v.iter()
                .flat_map(|x| x.to_le_bytes()[..width].to_vec())
                .collect()
        };

        // INT16 and UINT16 widen into `int32_data`.
        let i16s = [i16::MIN, -1, i16::MAX];
        let t = from_proto(&typed(
            data_type::INT16,
            i16s.iter().map(|&v| i32::from(v)).collect(),
            vec![],
        ))
        .unwrap();
        assert_eq!(t.dtype(), DType::I16);
        assert_eq!(t.to_vec::<i16>().unwrap(), i16s);
        let t = from_proto(&raw(
            data_type::INT16,
            i16s.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ))
        .unwrap();
        assert_eq!(t.to_vec::<i16>().unwrap(), i16s);

        let u16s = [0u16, 40_000, u16::MAX];
        let t = from_proto(&typed(
            data_type::UINT16,
            u16s.iter().map(|&v| i32::from(v)).collect(),
            vec![],
        ))
        .unwrap();
        assert_eq!(t.dtype(), DType::U16);
        assert_eq!(t.to_vec::<u16>().unwrap(), u16s);
        let wide: Vec<u64> = u16s.iter().map(|&v| u64::from(v)).collect();
        let t = from_proto(&raw(data_type::UINT16, le(&wide, 2))).unwrap();
        assert_eq!(t.to_vec::<u16>().unwrap(), u16s);

        // UINT32 and UINT64 live in `uint64_data`.
        let u32s = [0u32, 3_000_000_000, u32::MAX];
        let wide: Vec<u64> = u32s.iter().map(|&v| u64::from(v)).collect();
        let t = from_proto(&typed(data_type::UINT32, vec![], wide.clone())).unwrap();
        assert_eq!(t.dtype(), DType::U32);
        assert_eq!(t.to_vec::<u32>().unwrap(), u32s);
        let t = from_proto(&raw(data_type::UINT32, le(&wide, 4))).unwrap();
        assert_eq!(t.to_vec::<u32>().unwrap(), u32s);

        let u64s = [0u64, 1 << 63, u64::MAX];
        let t = from_proto(&typed(data_type::UINT64, vec![], u64s.to_vec())).unwrap();
        assert_eq!(t.dtype(), DType::U64);
        assert_eq!(t.to_vec::<u64>().unwrap(), u64s);
        let t = from_proto(&raw(data_type::UINT64, le(&u64s, 8))).unwrap();
        assert_eq!(t.to_vec::<u64>().unwrap(), u64s);

        // Each type survives a round trip through `to_proto`.
        for t in [
            Tensor::from_vec(&[3], i16s.to_vec()).unwrap(),
            Tensor::from_vec(&[3], u16s.to_vec()).unwrap(),
            Tensor::from_vec(&[3], u32s.to_vec()).unwrap(),
            Tensor::from_vec(&[3], u64s.to_vec()).unwrap(),
        ] {
            let back = from_proto(&to_proto("t", &t)).unwrap();
            assert_eq!((back.meta(), back.bytes()), (t.meta(), t.bytes()));
        }

        // Widened values must fit.
        for (p, needle) in [
            (
                typed(data_type::INT16, vec![0, 40_000, 0], vec![]),
                "40000 does not fit i16",
            ),
            (
                typed(data_type::UINT16, vec![0, -1, 0], vec![]),
                "-1 does not fit u16",
            ),
            (
                typed(data_type::UINT32, vec![], vec![0, 1 << 32, 0]),
                "`uint64_data` value 4294967296 does not fit u32",
            ),
            (
                typed(data_type::UINT64, vec![], vec![1]),
                "`uint64_data` holds 1",
            ),
            (raw(data_type::UINT16, vec![0; 5]), "need 6 bytes"),
        ] {
            let e = from_proto(&p).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn hostile_sizes_are_errors() {
        let cases = [
            (
                TensorProto {
                    dims: vec![-1],
                    data_type: data_type::FLOAT,
                    ..Default::default()
                },
                "negative",
            ),
            (
                TensorProto {
                    dims: vec![i64::MAX, i64::MAX],
                    data_type: data_type::FLOAT,
                    ..Default::default()
                },
                "overflow",
            ),
            (
                TensorProto {
                    dims: vec![1 << 40],
                    data_type: data_type::FLOAT,
                    raw_data: vec![0; 8],
                    ..Default::default()
                },
                "bytes",
            ),
            (
                TensorProto {
                    dims: vec![4],
                    data_type: data_type::FLOAT,
                    float_data: vec![1.0],
                    ..Default::default()
                },
                "float_data",
            ),
            (
                TensorProto {
                    dims: vec![1],
                    data_type: data_type::INT8,
                    int32_data: vec![300],
                    ..Default::default()
                },
                "does not fit",
            ),
            (
                TensorProto {
                    dims: vec![1],
                    data_type: data_type::FLOAT16,
                    ..Default::default()
                },
                "FLOAT16",
            ),
            (
                TensorProto {
                    dims: vec![1; 9],
                    data_type: data_type::FLOAT,
                    ..Default::default()
                },
                "rank",
            ),
            (
                TensorProto {
                    dims: vec![1],
                    data_type: data_type::FLOAT,
                    data_location: data_location::EXTERNAL,
                    ..Default::default()
                },
                "external",
            ),
        ];
        for (p, needle) in cases {
            let e = from_proto(&p).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
        assert!(decode(&[0xff, 0xff]).unwrap_err().contains("TensorProto"));
    }
}
