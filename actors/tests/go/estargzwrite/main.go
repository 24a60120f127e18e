// estargzwrite converts a tar on stdin to an eStargz blob on stdout with
// containerd/stargz-snapshotter's estargz package (a gzip member per file
// payload chunk, the TOC member stargz.index.json and the 51-byte footer
// member, all through Go's compress/gzip), so that stowage's exact
// re-encoders can be checked against the real thing. Built at test time with
// Debian's golang-go in GOPATH mode (GOPATH=/usr/share/gocode, package
// golang-github-containerd-stargz-snapshotter-dev); never committed as a binary.
//
//	estargzwrite [-mode build|writer|lossless] [-level N] [-chunk BYTES] [-prioritized a,b] < tar > blob
//
// Modes, as the tools call the package:
//
//	build     estargz.Build (nerdctl image convert --estargz, ctr-remote, the
//	          containerd converter): entries sorted, landmark files added, split
//	          into GOMAXPROCS parts written in parallel, one TOC over all of them
//	writer    NewWriterLevel + AppendTar + Close
//	lossless  NewWriterLevel + AppendTarLossLess + Close (BuildKit's
//	          compression=estargz: the input tar's bytes are kept as they are)
//
// -level -1 keeps the package's default (gzip.BestCompression); -chunk 0 its
// default chunk size (4 MiB). -bench prints the time spent converting (stdin
// already read, output buffered) to stderr as "estargzwrite: encode-ns N".
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/containerd/stargz-snapshotter/estargz"
)

func main() {
	mode := flag.String("mode", "build", "build, writer or lossless")
	level := flag.Int("level", -1, "gzip level (-1: the package's default, BestCompression)")
	chunk := flag.Int("chunk", 0, "chunk size of large files (0: the package's default)")
	prioritized := flag.String("prioritized", "", "comma-separated prioritized files (build)")
	bench := flag.Bool("bench", false, "print the conversion time to stderr")
	flag.Parse()

	in, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail(err)
	}
	var out bytes.Buffer
	start := time.Now()
	switch *mode {
	case "build":
		var opts []estargz.Option
		if *level != -1 {
			opts = append(opts, estargz.WithCompressionLevel(*level))
		}
		if *chunk > 0 {
			opts = append(opts, estargz.WithChunkSize(*chunk))
		}
		if *prioritized != "" {
			opts = append(opts, estargz.WithPrioritizedFiles(strings.Split(*prioritized, ",")))
		}
		blob, err := estargz.Build(io.NewSectionReader(bytes.NewReader(in), 0, int64(len(in))), opts...)
		if err != nil {
			fail(err)
		}
		if _, err := io.Copy(&out, blob); err != nil {
			fail(err)
		}
		if err := blob.Close(); err != nil {
			fail(err)
		}
	case "writer", "lossless":
		lv := *level
		if lv == -1 {
			lv = 9 // what NewWriter uses
		}
		w := estargz.NewWriterLevel(&out, lv)
		w.ChunkSize = *chunk
		if *mode == "writer" {
			err = w.AppendTar(bytes.NewReader(in))
		} else {
			err = w.AppendTarLossLess(bytes.NewReader(in))
		}
		if err != nil {
			fail(err)
		}
		if _, err := w.Close(); err != nil {
			fail(err)
		}
	default:
		fail(fmt.Errorf("unknown -mode %q", *mode))
	}
	if *bench {
		fmt.Fprintf(os.Stderr, "estargzwrite: encode-ns %d\n", time.Since(start).Nanoseconds())
	}
	bw := bufio.NewWriterSize(os.Stdout, 1<<20)
	if _, err := bw.Write(out.Bytes()); err != nil {
		fail(err)
	}
	if err := bw.Flush(); err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "estargzwrite:", err)
	os.Exit(1)
}
