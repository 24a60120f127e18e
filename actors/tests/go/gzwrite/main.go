// gzwrite compresses stdin to stdout with a Go gzip encoder, the way container
// tools do, so that stowage's exact re-encoders can be checked against the
// real thing. Built at test time with Debian's golang-go in GOPATH mode
// (GOPATH=/usr/share/gocode for the klauspost packages); never committed as a binary.
//
//	gzwrite -impl std|pgzip|kpgzip -level N [-chunk BYTES] [-block BYTES] [-blocks N] < in > out
//
// kpgzip is klauspost/compress/gzip: klauspost's flate as one stream, no pgzip blocks.
// scripts/flate-versions also builds this file against other klauspost/compress tags and
// against Go 1.27's compress/gzip (by rewriting the import), outside the repository.
package main

import (
	"bufio"
	"compress/gzip"
	"flag"
	"fmt"
	"io"
	"os"

	kpgzip "github.com/klauspost/compress/gzip"
	"github.com/klauspost/pgzip"
)

func main() {
	impl := flag.String("impl", "std", "std (compress/gzip), pgzip (klauspost/pgzip) or kpgzip (klauspost/compress/gzip)")
	level := flag.Int("level", -1, "compression level (-2..9, -1 default)")
	chunk := flag.Int("chunk", 32*1024, "size of each Write call")
	block := flag.Int("block", 0, "pgzip block size (0: library default)")
	blocks := flag.Int("blocks", 0, "pgzip concurrent blocks (0: library default)")
	flag.Parse()

	out := bufio.NewWriterSize(os.Stdout, 1<<20)
	var w io.WriteCloser
	switch *impl {
	case "std":
		zw, err := gzip.NewWriterLevel(out, *level)
		if err != nil {
			fail(err)
		}
		w = zw
	case "pgzip":
		zw, err := pgzip.NewWriterLevel(out, *level)
		if err != nil {
			fail(err)
		}
		if *block > 0 || *blocks > 0 {
			b, n := *block, *blocks
			if b == 0 {
				b = 1 << 20
			}
			if n == 0 {
				n = 4
			}
			if err := zw.SetConcurrency(b, n); err != nil {
				fail(err)
			}
		}
		w = zw
	case "kpgzip":
		zw, err := kpgzip.NewWriterLevel(out, *level)
		if err != nil {
			fail(err)
		}
		w = zw
	default:
		fail(fmt.Errorf("unknown -impl %q", *impl))
	}
	buf := make([]byte, *chunk)
	for {
		n, err := io.ReadFull(os.Stdin, buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				fail(werr)
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			fail(err)
		}
	}
	if err := w.Close(); err != nil {
		fail(err)
	}
	if err := out.Flush(); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "gzwrite:", err)
	os.Exit(2)
}
