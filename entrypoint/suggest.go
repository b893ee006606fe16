package entrypoint

import "strings"

// ClosestVariable returns the known BASTION_* variable nearest to name by
// edit distance (BASTION_ALOW → BASTION_ALLOW), for the warning about an
// unknown one; the first in declaration order wins a tie.
func ClosestVariable(name string) string {
	best, bestDist := "", -1
	for _, v := range Variables() {
		if !strings.HasPrefix(v.Name, "BASTION_") {
			continue
		}
		if d := editDistance(name, v.Name); bestDist < 0 || d < bestDist {
			best, bestDist = v.Name, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b: insertions,
// deletions and substitutions of one byte (variable names are ASCII).
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
