namespace Qwen3Cuda.Model.Templates;

/// <summary>Template syntax tree. Every node records where it starts in the template source.</summary>
internal abstract record JinjaNode(int Line, int Column);

// Statements
internal sealed record TextNode(string Text, int Line, int Column) : JinjaNode(Line, Column);
internal sealed record CommentNode(int Line, int Column) : JinjaNode(Line, Column);
internal sealed record OutputNode(JinjaNode Expression, int Line, int Column) : JinjaNode(Line, Column);
internal sealed record IfNode(JinjaNode Test, List<JinjaNode> Body, List<JinjaNode> Else, int Line, int Column) : JinjaNode(Line, Column);
internal sealed record ForNode(JinjaNode Target, JinjaNode Iterable, JinjaNode? Filter, List<JinjaNode> Body, List<JinjaNode> Else, int Line, int Column) : JinjaNode(Line, Column);
internal sealed record SetNode(JinjaNode Target, JinjaNode? Value, List<JinjaNode> Body, int Line, int Column) : JinjaNode(Line, Column);
internal sealed record MacroNode(string Name, List<JinjaNode> Parameters, List<JinjaNode> Body, int Line, int Column) : JinjaNode(Line, Column);
internal sealed record CallBlockNode(CallNode Call, List<JinjaNode>? CallerParameters, List<JinjaNode> Body, int Line, int Column) : JinjaNode(Line, Column);
internal sealed record FilterBlockNode(JinjaNode Filter, List<JinjaNode> Body, int Line, int Column) : JinjaNode(Line, Column);
internal sealed record BreakNode(int Line, int Column) : JinjaNode(Line, Column);
internal sealed record ContinueNode(int Line, int Column) : JinjaNode(Line, Column);

// Expressions
internal sealed record LiteralNode(JinjaValue Value, int Line, int Column) : JinjaNode(Line, Column);
internal sealed record NameNode(string Name, int Line, int Column) : JinjaNode(Line, Column);
internal sealed record ListNode(List<JinjaNode> Items, bool IsTuple, int Line, int Column) : JinjaNode(Line, Column);
internal sealed record DictNode(List<(JinjaNode Key, JinjaNode Value)> Items, int Line, int Column) : JinjaNode(Line, Column);
/// <summary>obj.name (Computed false) or obj[expr] (Computed true).</summary>
internal sealed record MemberNode(JinjaNode Object, JinjaNode Property, bool Computed, int Line, int Column) : JinjaNode(Line, Column);
internal sealed record SliceNode(JinjaNode? Start, JinjaNode? Stop, JinjaNode? Step, int Line, int Column) : JinjaNode(Line, Column);
internal sealed record CallNode(JinjaNode Callee, List<JinjaNode> Arguments, int Line, int Column) : JinjaNode(Line, Column);
internal sealed record KeywordArgumentNode(string Name, JinjaNode Value, int Line, int Column) : JinjaNode(Line, Column);
internal sealed record SpreadNode(JinjaNode Value, bool Keywords, int Line, int Column) : JinjaNode(Line, Column);
internal sealed record UnaryNode(string Operator, JinjaNode Operand, int Line, int Column) : JinjaNode(Line, Column);
internal sealed record BinaryNode(string Operator, JinjaNode Left, JinjaNode Right, int Line, int Column) : JinjaNode(Line, Column);
/// <summary>operand | name or operand | name(args): Filter is a NameNode or a CallNode.</summary>
internal sealed record FilterNode(JinjaNode Operand, JinjaNode Filter, int Line, int Column) : JinjaNode(Line, Column);
internal sealed record TestNode(JinjaNode Operand, bool Negate, string Test, int Line, int Column) : JinjaNode(Line, Column);
internal sealed record TernaryNode(JinjaNode Condition, JinjaNode IfTrue, JinjaNode IfFalse, int Line, int Column) : JinjaNode(Line, Column);
/// <summary>`a if cond` without else: a when cond is true, else undefined.</summary>
internal sealed record SelectNode(JinjaNode Value, JinjaNode Condition, int Line, int Column) : JinjaNode(Line, Column);
