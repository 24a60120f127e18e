//go:build !nocontentsize

package main

import (
	"io"

	"github.com/klauspost/compress/zstd"
)

// resetContentSize is Encoder.ResetContentSize (klauspost/compress 1.13.2 on).
func resetContentSize(enc *zstd.Encoder, w io.Writer, n int64) {
	enc.ResetContentSize(w, n)
}
