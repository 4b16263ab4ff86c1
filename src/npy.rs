//! `.npy` files in and out of host tensors (the CLI's `run` format), via the
//! `npyz` crate, which reads the dtype from the file's header.
//!
//! Only C-order arrays of the dtypes ampoule has are accepted; anything else
//! is an error naming the file and what it holds.

use std::io::Write;
use std::path::Path;

use ampoule_kernels::{Bool8, DType, Tensor};
use anyhow::{bail, Context, Result};
use npyz::{TypeChar, WriterBuilder};

/// Reads a `.npy` file into a tensor.
pub fn read(path: &Path) -> Result<Tensor> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read `{}`", path.display()))?;
    from_bytes(&bytes).with_context(|| format!("`{}` is not a usable .npy file", path.display()))
}

/// Parses `.npy` bytes.
pub fn from_bytes(bytes: &[u8]) -> Result<Tensor> {
    let npy = npyz::NpyFile::new(bytes)?;
    if npy.order() != npyz::Order::C {
        bail!("array is in Fortran order; save it with np.ascontiguousarray first");
    }
    let shape: Vec<usize> = npy
        .shape()
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<_, _>>()?;
    let npyz::DType::Plain(ts) = npy.dtype() else {
        bail!("structured arrays are not supported")
    };
    let dtype = match (ts.type_char(), ts.size_field()) {
        (TypeChar::Float, 4) => DType::F32,
        (TypeChar::Float, 8) => DType::F64,
        (TypeChar::Int, 1) => DType::I8,
        (TypeChar::Uint, 1) => DType::U8,
        (TypeChar::Int, 2) => DType::I16,
        (TypeChar::Uint, 2) => DType::U16,
        (TypeChar::Int, 4) => DType::I32,
        (TypeChar::Uint, 4) => DType::U32,
        (TypeChar::Int, 8) => DType::I64,
        (TypeChar::Uint, 8) => DType::U64,
        (TypeChar::Bool, 1) => DType::Bool,
        _ => bail!("dtype `{ts}` is not supported (use float32, float64, int8, uint8, int16, uint16, int32, uint32, int64, uint64 or bool)"),
    };
    Ok(match dtype {
        DType::F32 => Tensor::from_vec(&shape, npy.into_vec::<f32>()?)?,
        DType::F64 => Tensor::from_vec(&shape, npy.into_vec::<f64>()?)?,
        DType::I8 => Tensor::from_vec(&shape, npy.into_vec::<i8>()?)?,
        DType::U8 => Tensor::from_vec(&shape, npy.into_vec::<u8>()?)?,
        DType::I32 => Tensor::from_vec(&shape, npy.into_vec::<i32>()?)?,
        DType::I64 => Tensor::from_vec(&shape, npy.into_vec::<i64>()?)?,
        DType::I16 => Tensor::from_vec(&shape, npy.into_vec::<i16>()?)?,
        DType::U16 => Tensor::from_vec(&shape, npy.into_vec::<u16>()?)?,
        DType::U32 => Tensor::from_vec(&shape, npy.into_vec::<u32>()?)?,
        DType::U64 => Tensor::from_vec(&shape, npy.into_vec::<u64>()?)?,
        DType::Bool => {
            let v: Vec<Bool8> = npy
                .into_vec::<bool>()?
                .into_iter()
                .map(|b| Bool8(u8::from(b)))
                .collect();
            Tensor::from_vec(&shape, v)?
        }
    })
}

/// Serializes a tensor as `.npy` bytes.
pub fn to_bytes(t: &Tensor) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    fn put<T: npyz::Serialize + npyz::AutoSerialize + Copy>(
        out: &mut Vec<u8>,
        shape: &[u64],
        data: &[T],
    ) -> Result<()> {
        let mut w = npyz::WriteOptions::new()
            .default_dtype()
            .shape(shape)
            .writer(out)
            .begin_nd()?;
        w.extend(data.iter().copied())?;
        w.finish()?;
        Ok(())
    }
    match t.dtype() {
        DType::F32 => put(&mut out, &shape, t.data::<f32>()?)?,
        DType::F64 => put(&mut out, &shape, t.data::<f64>()?)?,
        DType::I8 => put(&mut out, &shape, t.data::<i8>()?)?,
        DType::U8 => put(&mut out, &shape, t.data::<u8>()?)?,
        DType::I32 => put(&mut out, &shape, t.data::<i32>()?)?,
        DType::I64 => put(&mut out, &shape, t.data::<i64>()?)?,
        DType::I16 => put(&mut out, &shape, t.data::<i16>()?)?,
        DType::U16 => put(&mut out, &shape, t.data::<u16>()?)?,
        DType::U32 => put(&mut out, &shape, t.data::<u32>()?)?,
        DType::U64 => put(&mut out, &shape, t.data::<u64>()?)?,
        DType::Bool => {
            let v: Vec<bool> = t.bytes().iter().map(|&b| b != 0).collect();
            put(&mut out, &shape, &v)?
        }
    }
    Ok(out)
}

/// Writes a tensor to a `.npy` file.
pub fn write(path: &Path, t: &Tensor) -> Result<()> {
    let bytes = to_bytes(t)?;
    let mut f = std::fs::File::create(path)
        .with_context(|| format!("cannot create `{}`", path.display()))?;
    f.write_all(&bytes)
        .with_context(|| format!("cannot write `{}`", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_dtype() {
        let cases = [
            Tensor::from_vec(&[2, 3], vec![1.5f32, -2.0, 0.0, 3.25, f32::INFINITY, -0.5]).unwrap(),
            Tensor::from_vec(&[3], vec![1.0f64, 2.0, -3.5]).unwrap(),
            Tensor::from_vec(&[2, 2], vec![1i64, -2, i64::MAX, 0]).unwrap(),
            Tensor::from_vec(&[1], vec![-7i32]).unwrap(),
            Tensor::from_vec(&[2], vec![255u8, 0]).unwrap(),
            Tensor::from_vec(&[2], vec![-128i8, 5]).unwrap(),
            Tensor::from_vec(&[3], vec![i16::MIN, -1, i16::MAX]).unwrap(),
            Tensor::from_vec(&[2], vec![0u16, u16::MAX]).unwrap(),
            Tensor::from_vec(&[2], vec![3_000_000_000u32, 1]).unwrap(),
            Tensor::from_vec(&[2], vec![u64::MAX, 1 << 63]).unwrap(),
            Tensor::from_vec(&[3], vec![Bool8(1), Bool8(0), Bool8(1)]).unwrap(),
            Tensor::from_vec::<f32>(&[0, 4], vec![]).unwrap(),
            Tensor::scalar(2.5f32),
        ];
        for t in cases {
            let back = from_bytes(&to_bytes(&t).unwrap()).unwrap();
            assert_eq!(back.meta(), t.meta());
            assert_eq!(back.bytes(), t.bytes());
        }
    }

    #[test]
    fn rejects_garbage_and_unsupported_dtypes() {
        assert!(from_bytes(b"not an npy file").is_err());
        // A float16 array (`<f2`), written by hand: version 1.0, then the
        // header length and a header padded so the data is 64-byte aligned.
        let header = "{'descr': '<f2', 'fortran_order': False, 'shape': (2,), }";
        let padded = format!("{header:<width$}\n", width = 64 - 10 - 1);
        let mut f16s = b"\x93NUMPY\x01\x00".to_vec();
        f16s.extend_from_slice(&(padded.len() as u16).to_le_bytes());
        f16s.extend_from_slice(padded.as_bytes());
        f16s.extend_from_slice(&[0, 0x3c, 0, 0x40]);
        let err = from_bytes(&f16s).unwrap_err().to_string();
        assert!(err.contains("`<f2` is not supported"), "{err}");
    }
}
