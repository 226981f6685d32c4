// spanserve-cli's one-segment-a-line rendering (server/segment_lines.h).
#include "server/segment_lines.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace spanserve {
namespace {

std::string Render(const std::vector<std::string>& pieces) {
  SegmentLines lines("<a>", "</a>");
  std::string out;
  for (const std::string& piece : pieces) out += lines.Feed(piece);
  return out + lines.Flush();
}

TEST(SegmentLinesTest, EachHeaderStartsALine) {
  EXPECT_EQ(Render({"<a>0</a>(7*(5-2))+6<a>1</a>(7*3)+6<a>2</a>21+6<a>3</a>27"}),
            "(7*(5-2))+6\n(7*3)+6\n21+6\n27");
}

TEST(SegmentLinesTest, MarkersSplitAcrossPieces) {
  EXPECT_EQ(Render({"<", "a>0</", "a>12", "+3<a", ">1,0<", "/a>15"}), "12+3\n15");
  EXPECT_EQ(Render({"<a>0</a>x", "<", "a", ">", "1", "</a>", "y"}), "x\ny");
}

TEST(SegmentLinesTest, TextBeforeTheFirstHeaderKeepsItsLine) {
  EXPECT_EQ(Render({"free text<a>0</a>more"}), "free text\nmore");
}

TEST(SegmentLinesTest, WhatIsNotAMarkerIsText) {
  EXPECT_EQ(Render({"a<b", " and <", "c"}), "a<b and <c");
  EXPECT_EQ(Render({"ends with <"}), "ends with <");   // an unfinished anchor is text
  EXPECT_EQ(Render({"x<a>0,1"}), "x\n");                // an unfinished header is dropped
}

}  // namespace
}  // namespace spanserve
