//go:build nocontentsize

package main

import (
	"errors"
	"io"

	"github.com/klauspost/compress/zstd"
)

// resetContentSize: releases before 1.13.2 have no ResetContentSize.
func resetContentSize(_ *zstd.Encoder, _ io.Writer, _ int64) {
	fail(errors.New("ResetContentSize: not in this klauspost/compress release (built with -tags nocontentsize)"))
}
