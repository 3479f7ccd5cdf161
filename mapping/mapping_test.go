package mapping

import (
	"math/rand"
	"strings"
	"testing"
)

func TestPlanDebianZeroSlot(t *testing.T) {
	m, err := Plan(Input{BlockBits: 12, PrimaryBlocks: 113, Slots: []Slot{{}}, BlobSizes: []int64{5417 * 4096}})
	if err != nil {
		t.Fatal(err)
	}
	if e := m.Device(1); e.Start != 113 || e.Blocks != 5417 || !m.Computed(1) {
		t.Fatalf("device 1 = %+v computed=%v", e, m.Computed(1))
	}
	if m.Size() != (113+5417)*4096 {
		t.Fatalf("size %d", m.Size())
	}
}

func TestPlanKeepsExistingAndAligns(t *testing.T) {
	// nydus-style: 512 KiB = 128 blocks alignment with holes, given in the table
	m, err := Plan(Input{BlockBits: 12, PrimaryBlocks: 3,
		Slots:     []Slot{{Blocks: 10, UniAddr: 128}, {Blocks: 5, UniAddr: 256}},
		BlobSizes: []int64{10 * 4096, 5*4096 - 100}})
	if err != nil {
		t.Fatal(err)
	}
	if m.Computed(1) || m.Computed(2) {
		t.Fatal("existing slots must not be recomputed")
	}
	if m.Size() != 261*4096 {
		t.Fatalf("size %d", m.Size())
	}
	// assigned with --align 128
	m, err = Plan(Input{BlockBits: 12, PrimaryBlocks: 3, Align: 128,
		Slots: []Slot{{}, {}}, BlobSizes: []int64{10 * 4096, 5 * 4096}})
	if err != nil {
		t.Fatal(err)
	}
	if m.Device(1).Start != 128 || m.Device(2).Start != 256 {
		t.Fatalf("got %+v %+v", m.Device(1), m.Device(2))
	}
	if _, _, n, ok := m.Lookup(3 * 4096); ok || n != 125*4096 {
		t.Fatalf("hole lookup ok=%v n=%d", ok, n)
	}
}

func TestPlanRejects(t *testing.T) {
	cases := []struct {
		name string
		in   Input
		want string
	}{
		{"overlap primary", Input{BlockBits: 12, PrimaryBlocks: 10, Slots: []Slot{{Blocks: 4, UniAddr: 5}}, BlobSizes: []int64{4 * 4096}}, "overlap"},
		{"overlap each other", Input{BlockBits: 12, PrimaryBlocks: 1, Slots: []Slot{{Blocks: 4, UniAddr: 10}, {Blocks: 4, UniAddr: 12}}, BlobSizes: []int64{4 * 4096, 4 * 4096}}, "overlap"},
		{"beyond 32 bits", Input{BlockBits: 12, PrimaryBlocks: 1, Slots: []Slot{{Blocks: 4, UniAddr: 1<<32 - 2}}, BlobSizes: []int64{4 * 4096}}, "beyond the 32-bit"},
		{"short blob", Input{BlockBits: 12, PrimaryBlocks: 1, Slots: []Slot{{Blocks: 8}}, BlobSizes: []int64{7 * 4096}}, "shorter than the 8 blocks"},
		{"empty blob", Input{BlockBits: 12, PrimaryBlocks: 1, Slots: []Slot{{}}, BlobSizes: []int64{0}}, "empty"},
		{"count mismatch", Input{BlockBits: 12, PrimaryBlocks: 1, Slots: []Slot{{}}, BlobSizes: nil}, "blob sizes"},
		{"bad block bits", Input{BlockBits: 3, PrimaryBlocks: 1}, "block size"},
	}
	for _, c := range cases {
		_, err := Plan(c.in)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: got %v, want error containing %q", c.name, err, c.want)
		}
	}
	// 48-bit allows it
	if _, err := Plan(Input{BlockBits: 12, PrimaryBlocks: 1, AddrBits: 48, Slots: []Slot{{Blocks: 4, UniAddr: 1<<32 - 2}}, BlobSizes: []int64{4 * 4096}}); err != nil {
		t.Fatal(err)
	}
}

// TestLookupMatchesBruteForce plans random layouts and checks every block.
func TestLookupMatchesBruteForce(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for iter := 0; iter < 200; iter++ {
		n := rng.Intn(6)
		in := Input{BlockBits: 9, PrimaryBlocks: uint64(1 + rng.Intn(20)), Align: uint64(1 + rng.Intn(8))}
		for i := 0; i < n; i++ {
			blocks := uint64(1 + rng.Intn(10))
			in.Slots = append(in.Slots, Slot{Blocks: blocks * uint64(rng.Intn(2))})
			in.BlobSizes = append(in.BlobSizes, int64(blocks)*512-int64(rng.Intn(300)))
		}
		m, err := Plan(in)
		if err != nil {
			t.Fatal(err)
		}
		owner := make([]int, m.Size()/512)
		for i := range owner {
			owner[i] = -1
		}
		for d := 0; d < m.Devices(); d++ {
			e := m.Device(d)
			for b := e.Start; b < e.End(); b++ {
				owner[b] = d
			}
		}
		for b := range owner {
			off := int64(b)*512 + int64(rng.Intn(512))
			e, devOff, n, ok := m.Lookup(off)
			if (owner[b] >= 0) != ok || (ok && (e.Dev != owner[b] || devOff != off-int64(e.Start)*512 || n != int64(e.End())*512-off)) {
				t.Fatalf("iter %d block %d: owner %d, lookup %+v %d %d %v", iter, b, owner[b], e, devOff, n, ok)
			}
		}
		var total int64
		if err := m.Runs(0, m.Size()+100, func(r Run) error { total += r.Len; return nil }); err != nil || total != m.Size() {
			t.Fatalf("runs cover %d of %d", total, m.Size())
		}
	}
}

func BenchmarkLookup1000(b *testing.B) {
	in := Input{BlockBits: 12, PrimaryBlocks: 100}
	for i := 0; i < 1000; i++ {
		in.Slots = append(in.Slots, Slot{})
		in.BlobSizes = append(in.BlobSizes, 1<<20)
	}
	m, err := Plan(in)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewSource(1))
	offs := make([]int64, 4096)
	for i := range offs {
		offs[i] = rng.Int63n(m.Size())
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m.Lookup(offs[i&4095])
	}
}

func BenchmarkPlan1000(b *testing.B) {
	in := Input{BlockBits: 12, PrimaryBlocks: 100}
	for i := 0; i < 1000; i++ {
		in.Slots = append(in.Slots, Slot{})
		in.BlobSizes = append(in.BlobSizes, 1<<20)
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := Plan(in); err != nil {
			b.Fatal(err)
		}
	}
}
